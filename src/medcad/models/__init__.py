"""Models: timm backbones with offline weights, classification heads, segmentation and detection networks."""
