"""Networks by name (`networks`: segmentation-models-pytorch architectures and encoders, save/load), ImageNet
encoder weights from installed packages (`pretrained`), a model's config and files (`config`) and the shipped ONNX
model format (`onnx_file`); the last two without torch, for the core install. Import the submodule you need: this
package imports nothing."""
