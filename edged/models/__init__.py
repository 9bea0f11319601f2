"""Model bundle, onnxruntime sessions and the stateless model blocks."""
