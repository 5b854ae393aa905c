"""Part 1 of the DEUP tutorial with torch_deup: the API on random tabular data."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_deup.post_processing import DEUP

torch.manual_seed(0)
n_cal, in_dim, n_classes = 100, 8, 5
x_cal = torch.randn(n_cal, in_dim)
y_cal = torch.randint(0, n_classes, (n_cal,))
cal_loader = DataLoader(TensorDataset(x_cal, y_cal), batch_size=32)
model = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, n_classes))
# In a real use-case, load a pre-trained model here.

deup = DEUP(task="classification", model=model, num_folds=5, hidden_dim=32, max_epochs=30, device="cpu")
deup.fit(cal_loader)

x_test = torch.randn(10, in_dim)
uncertainty = deup(x_test)
print("Epistemic scores g(x):", uncertainty)
probs = deup.predict_proba(x_test)
print("Base-model likelihood shape:", probs.shape)
