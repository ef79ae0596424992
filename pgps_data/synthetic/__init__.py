"""Seeded CT-like phantoms with rare lesions, written as an MSD or nnU-Net raw dataset."""
