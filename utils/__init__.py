"""Library code: configuration, data, augmentation, loss, decoding, metrics and the training engine."""
