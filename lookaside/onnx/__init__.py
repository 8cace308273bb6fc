"""ONNX: the backbone and its adapter sites as graphs whose adapters are inputs, for ONNX Runtime.

- :mod:`lookaside.onnx.graph`: the exportable forward (routing and slot tensors as inputs);
- :mod:`lookaside.onnx.export`: what a graph is (:class:`~lookaside.onnx.export.GraphSpec`), its
  cache key, exporting it;
- :mod:`lookaside.onnx.cache`: graphs on disk, checked before use;
- :mod:`lookaside.onnx.quantize`: int8 backbone weights;
- :mod:`lookaside.onnx.session`: sessions per device and runs with tensors bound in place;
- :mod:`lookaside.onnx.runner`: :class:`~lookaside.onnx.runner.OrtFeatures`, the model's feature
  runner (the engine's ``onnxruntime`` setting);
- :mod:`lookaside.onnx.standalone`: one adapter merged with the backbone and the fbank front end
  into a self-contained model (``lookaside-train export --onnx``).

Nothing here is imported unless ONNX is used: the torch engine never loads onnxruntime.
"""
