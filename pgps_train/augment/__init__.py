"""nnU-Net's default training augmentation, batched on the training device (torch)."""
