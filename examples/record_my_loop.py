"""Record your own PyTorch training loop with gfm.record, then fit a GFM on the runs and forecast a new one.

    python examples/record_my_loop.py            # ~1 minute on a laptop CPU; writes runs/my_net.zarr
"""

from __future__ import annotations

import torch
from torch import nn

import gfm
from gfm.forecasters import Trajectories, make_forecaster


class MyNet(nn.Module):
    """Any module: gfm records every parameter in named_parameters() order."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.head = nn.Linear(2, 8), nn.LayerNorm(8), nn.Linear(8, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.embed(x))))


def main(path: str = "runs/my_net.zarr", n_runs: int = 24, steps: int = 60) -> None:
    torch.set_num_threads(1)
    for r in range(n_runs):
        torch.manual_seed(r)
        x = torch.randn(64, 2)
        y = x @ torch.randn(2, 1)
        model = MyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        # record 0 = the weights now; then one record per optimizer step; run r goes to dataset seed r % 2
        with gfm.record(path, model, opt, every=1, mode="w" if r == 0 else "a", overwrite=True,
                        dataset_seed=r % 2) as rec:
            for k in range(steps):
                batch = slice(k % 4 * 16, (k % 4 + 1) * 16)
                loss = ((model(x[batch]) - y[batch]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss)
    ts = gfm.open_trajectories(path)
    print(f"{path}: {ts.n_runs} runs x {ts.n_records} records x {ts.n_params} params, state {ts.state_names}")
    train, val, test = (Trajectories.from_store(ts, ids) for ids in (range(16), range(16, 20), range(20, 24)))
    fc = make_forecaster("gfm", {"width": 32, "steps": 300, "eval_every": 100}, prefix_end=10, horizons=[30, 60])
    fc.fit(train, val, rng=torch.Generator().manual_seed(0))
    pred = fc.forecast(test.prefix(10), horizons=[60])[:, 0]
    mse = float(((pred - test.weights[:, 60]) ** 2).mean())
    stay = float(((test.weights[:, 10] - test.weights[:, 60]) ** 2).mean())
    print(f"GFM final-weight MSE on 4 new runs: {mse:.4g} (staying at step 10: {stay:.4g})")


if __name__ == "__main__":
    main()
