import torch

# The suite's tensors are tiny: one thread avoids oversubscription on small CI machines.
torch.set_num_threads(1)
