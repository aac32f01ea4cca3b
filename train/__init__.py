"""Training stage: data, augmentation, the ResNet-9 model and its trainer."""
