"""Raw datasets in: readers, dataset layouts (MSD, nnU-Net raw), preprocessing and its inverse, resampling, convert."""
