"""Networks by name (`networks`: segmentation-models-pytorch architectures and encoders, save/load), ImageNet
encoder weights from installed packages (`pretrained`), and a model's config and files (`config`, without torch:
the engines read it where torch is not installed). Import the submodule you need: this package imports nothing."""
