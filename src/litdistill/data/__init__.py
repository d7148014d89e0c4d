"""DataModules and the data the project can make or read itself."""

from litdistill.data.classification import TextClassificationDataModule

__all__ = ["TextClassificationDataModule"]
