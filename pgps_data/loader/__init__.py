"""The streaming loader: crop requests, the torchdata.nodes graph, our worker node, the ring."""
