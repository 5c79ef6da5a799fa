"""Data layer: synthetic phantoms, source readers, DICOM decoding, preprocessing, datasets, splits.

Importing this package never imports torch: the serving runtime reuses decode and preprocess.
"""
