"""MPCFormer (ICLR 2023): MPC-friendly Transformers by approximation and knowledge distillation.

- `approximations`: Quad GeLU, 2Quad and 2ReLU softmax, and the exact functions, on torch or CrypTen tensors.
- `convert`: the typed `Approximation` ('quad+2quad') and `to_student(model, approximation)`.
- `distill`: fine-tuning (teacher, baselines), the two distillation stages, cached `TeacherOutputs`, exact resume.
- `data`: the teacher (cut to fewer layers), the data splits (train / dev / test) and their tokenisation.
- `study`: the paper's accuracy study (baselines and distilled students at equal steps) and accuracy under MPC.
- `crypten_compat`: the fixes CrypTen 0.4.1 needs on torch 2.x, and `join_party`.
- `private_inference`: two parties and a dealer; party 1 learns the logits (the security model is there).
- `audit`: every value each party sends or learns, and `find_leaks`.
- `bench`: time, bytes and rounds per function and per whole model under CrypTen.
- `diagnostics`: why a student does or does not learn.
- `claims`: the paper's claims decided from the measured tables.
"""
