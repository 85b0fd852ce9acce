"""The step both loops train with (`TrainStep`, eager or replayed by common/graphs.py) and AdamW in the run's
graph mode (docs/speed.md). A step never reads a value back to the host, so it can be captured: micro-batches of
exactly --batch-size rows (filler rows weigh 0, the others 1 / items in the optimizer batch, so K micro-batches
give one large batch's update), and the learning rate and running figures in device tensors."""
import torch
import torch.nn.functional as F

from common.device import autocast


class TrainStep:
    """forward + backward of one micro-batch (`micro`: a batch with `label_ids` and `weights`), the update."""

    def __init__(self, forward, params: list, optimizer, scaler, device: torch.device, dtype, clip: float | None,
                 steps: int):
        self.forward, self.params, self.optimizer, self.scaler = forward, params, optimizer, scaler
        self.device, self.dtype, self.clip = device, dtype, clip
        self.totals = torch.zeros(3, device=device)  # loss sum, correct, items since the last reset
        self.grad_norm = torch.zeros((), device=device)  # of the last update, before clipping
        self.bad_step = torch.full((), -1.0, device=device)  # first step with a non-finite loss or norm
        self.step_no = torch.zeros((), device=device)  # optimizer steps done in this run
        self.bad_now = torch.zeros((), dtype=torch.bool, device=device)
        self.step_loss = torch.zeros((), device=device)  # this step's mean loss, summed over its micro-batches
        self.step_losses = torch.zeros(steps, device=device)  # each of the run's steps (as HF Trainer logs them)

    def counters(self) -> list[torch.Tensor]:
        return [self.totals, self.grad_norm, self.bad_step, self.step_no, self.bad_now, self.step_loss,
                self.step_losses]

    def micro(self, batch: dict) -> None:
        with autocast(self.device, self.dtype):
            logits = self.forward(batch)
        ce = F.cross_entropy(logits.float(), batch["label_ids"], reduction="none")
        loss = (ce * batch["weights"]).sum()
        self.scaler.scale(loss).backward()
        self.step_loss += loss.detach()
        real = batch["weights"] > 0
        ce_real = torch.where(real, ce.detach(), 0.0).sum()
        correct = ((logits.detach().argmax(-1) == batch["label_ids"]) & real).sum()
        self.totals += torch.stack([ce_real, correct.float(), real.sum().float()])
        self.bad_now |= ~torch.isfinite(ce_real)

    def update(self) -> None:
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.clip is not None:  # (not folded into fused AdamW's grad_scale: see NOTES.md, 2026-12-01)
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, norm)
        self.grad_norm.copy_(norm)
        # fp16 loss scaling overflows now and then by design (the scaler skips that step)
        bad = self.bad_now if self.scaler.is_enabled() else self.bad_now | ~torch.isfinite(norm)
        self.bad_step.copy_(torch.where((self.bad_step < 0) & bad, self.step_no, self.bad_step))
        self.bad_now.zero_()
        at = self.step_no.long().clamp(max=len(self.step_losses) - 1).view(1)
        self.step_losses.index_copy_(0, at, self.step_loss.view(1))
        self.step_loss.zero_()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=False)  # the same gradient tensors every step (graphs need them)
        self.step_no += 1


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate: in place when it is a device tensor (no host sync, graph-safe)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def follow_graph_mode(optimizer, capturable: bool, device: torch.device) -> None:
    """Put AdamW in this run's graph mode (capturable: lr on the device), whatever mode it was made or loaded in."""
    fused = device.type == "cuda"
    for group in optimizer.param_groups:
        lr = float(group["lr"])  # (a device tensor in a graph run's checkpoint: read once, here)
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        group["capturable"], group["fused"] = capturable, fused
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            on_device = capturable or fused
            state["step"] = state["step"].to(device=device if on_device else "cpu", dtype=torch.float32)
