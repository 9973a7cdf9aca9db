"""SegNet in PyTorch: models, CamVid data, the paper's metrics and training."""
