"""What `compile` is handed, before the model is read: Neuron-style compiler flags (``flags``)
and the model's source (``sources``: an ONNX file, a torch module, a TensorFlow SavedModel).
Above the cut (`..cut`) only because a float16 source's precision is checked against the
engines (`..cut.choose`).
"""
