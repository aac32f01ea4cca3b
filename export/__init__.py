"""Export stage: checkpoint -> verified ONNX (TTA optionally in the graph), fp16 variant, TensorRT, Triton."""
