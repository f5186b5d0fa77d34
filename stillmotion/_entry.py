"""The ``stillmotion`` console script's entry point, tiny on purpose.

The motion engine renders in processes started with ``spawn``, and a spawned process
re-imports the script that started its parent. With the script importing ``stillmotion.cli``
(the web app, the store, every engine's settings) each render process carried ~40 MB of
modules it never uses; importing this module instead costs nothing.
"""


def main() -> None:
    from stillmotion.cli import main as cli_main

    cli_main()
