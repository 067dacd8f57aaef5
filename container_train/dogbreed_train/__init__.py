"""Fine-tune a torchvision image classifier under the SageMaker training contract."""

__version__ = "0.1.0"
