"""Calibration data and statistics for the passes that need real data.

- data.py: CalibrationData (re-iterable feed batches with a known count), .npz/.npy
  folder reader, one-line errors for wrong shapes, dtypes and NaN/Inf;
- readers.py: text + tokenizer and image-folder readers, `load_calibration`;
- stats.py: streaming statistics (min/max, |x| histograms, per-channel maxima, Gram
  matrices) from onnxruntime runs in chunks, bounded memory;
- observers.py: minmax, percentile, entropy (KL) and MSE ranges from those statistics;
- cache.py: collection with a cache keyed by model, data and method; TensorRT
  calibration tables;
- sensitivity.py: per-layer sensitivity and mixed precision under a budget.
"""
