from stillmotion.cli import main

main()
