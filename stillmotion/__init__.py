"""stillmotion: a self-hosted Bailian/DashScope-compatible image-to-video task service."""

__version__ = "0.1.0"
__all__ = ["__version__"]
