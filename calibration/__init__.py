"""Calibration data and statistics (readers, streaming observers, sensitivity scores).

Not built yet: the quantization issue lands the readers (.npz/.npy folders, text +
tokenizer, image folders), the streaming observers and the calibration cache here.
Until then the only sample data is converter/inputs.py's (real demo data, an .npz).
"""
