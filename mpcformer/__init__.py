"""MPCFormer (ICLR 2023): MPC-friendly Transformers by approximation and knowledge distillation.

- `approximations`: Quad GeLU, 2Quad and 2ReLU softmax, and the exact functions, on torch or CrypTen tensors.
- `convert.to_student(model, "quad+2quad")`: a transformers BERT-family model's MPC-friendly student.
- `distill`: fine-tuning (teacher, baselines) and the two distillation stages, with exact resume.
- `crypten_compat`: the fixes CrypTen 0.4.1 needs on torch 2.x, and `join_party`.
- `private_inference.private_inference(model, ids, mask)`: two parties and a dealer; party 1 learns the logits.
- `bench`: time, bytes and rounds per function and per whole model under CrypTen.
"""
