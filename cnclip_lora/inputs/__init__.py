"""The input path: how an image file and a title become model inputs (images, text, the training
collator). Training and every retrieval door go through these modules, so they cannot drift."""
