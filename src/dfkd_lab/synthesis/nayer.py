"""NAYER (Tran et al., CVPR 2024): noisy-layer generation.

The generator's input is a fixed embedding of each target class, not a random latent. The
randomness lives in a small *noisy layer*: a linear map from the embedding to the generator's
input, one per copy of the classes in a batch (so two images of one class differ), drawn
afresh at the start of every synthesis round and trained with the generator for the round's
``g_steps`` steps. The generator itself is kept across rounds, so a round starts from what
the earlier ones learned, and is re-initialised every ``g_life`` epochs so it does not settle
into one mode. The round's loss is the terms of ``GeneratorInversion`` (``target_ce`` on the
round's classes, optionally label-smoothed into soft targets; ``bn`` with an EMA over batches
as in FastDFKD; ``adversarial_kl_agreement``); its best batch joins the pool the student
distils from.

The class embedding (``label_embedding``) is pluggable:

- ``teacher_fc``: the rows of the teacher's classifier weight; needs nothing outside the teacher
- ``onehot``: the identity matrix
- ``learned``: a free table, trained with the generator and re-initialised with it
- ``text``: the paper's choice, a text encoder's embedding of "a image of <class name>"; give
  ``text_encoder`` (any object with ``encode(list_of_strings) -> tensor``) and ``class_names``

Every embedding is scaled to rows of norm sqrt(dim), so the noisy layer's N(0, 1/dim) weights
give the generator unit-variance inputs whatever the kind.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError
from .generator_inversion import GeneratorInversion
from .objectives import classifier

EMBEDDINGS = ("teacher_fc", "onehot", "learned", "text")


def text_embedding(encoder, class_names, prompt: str) -> torch.Tensor:
    """The encoder's embedding of the prompt filled with each class name: (classes, dim)."""
    encode = getattr(encoder, "encode", encoder)
    table = encode([prompt.format(name) for name in class_names])
    table = torch.as_tensor(table).detach().float().cpu()
    if table.dim() != 2 or table.shape[0] != len(class_names):
        raise ConfigError(f"method.synthesizer.text_encoder returned shape {tuple(table.shape)}: expected one row "
                         f"per class ({len(class_names)}, dim)")
    return table


def scaled_rows(table: torch.Tensor) -> torch.Tensor:
    return F.normalize(table.float(), dim=1) * math.sqrt(table.shape[1])


def round_targets(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Whole copies of the classes in order (copy i is rows i*K .. i*K+K-1, the rows noisy
    layer i maps), the remainder of the batch random distinct classes."""
    whole = torch.arange(n - n % num_classes) % num_classes
    return torch.cat([whole, torch.randperm(num_classes, generator=generator)[: n % num_classes]])


class NoisyLayerSynthesizer(GeneratorInversion):
    def __init__(self, g_steps: int = 20, g_life: int = 10, label_embedding: str = "teacher_fc",
                 learned_dim: int = 64, label_smoothing: float = 0.0, text_encoder=None,
                 class_names: list | None = None, prompt: str = "a image of {}", **kwargs):
        super().__init__(**kwargs)
        if g_steps < 1:
            raise ConfigError(f"method.synthesizer.g_steps must be >= 1, got {g_steps}")
        if g_life < 1:
            raise ConfigError(f"method.synthesizer.g_life must be >= 1 (epochs), got {g_life}")
        if label_embedding not in EMBEDDINGS:
            raise ConfigError(f"method.synthesizer.label_embedding must be one of {list(EMBEDDINGS)}, got {label_embedding!r}")
        if label_embedding == "text" and (text_encoder is None or not class_names):
            raise ConfigError("method.synthesizer.label_embedding=text needs method.synthesizer.text_encoder (an object with "
                             "encode(list_of_strings)) and method.synthesizer.class_names (one name per class)")
        if learned_dim < 1:
            raise ConfigError(f"method.synthesizer.learned_dim must be >= 1, got {learned_dim}")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"method.synthesizer.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.g_steps, self.g_life = g_steps, g_life
        self.label_embedding, self.learned_dim = label_embedding, learned_dim
        self.label_smoothing = label_smoothing
        self.text_encoder, self.class_names, self.prompt = text_encoder, class_names, prompt
        self.life = 0  # g_life periods since the start: the generator is re-initialised when it changes

    def setup(self, image_shape, num_classes, value_range, teacher):
        super().setup(image_shape, num_classes, value_range, teacher)
        if self.label_embedding == "learned":
            self.embedding = nn.Parameter(torch.randn(num_classes, self.learned_dim, generator=self.rng))
            return
        if self.label_embedding == "teacher_fc":
            table = classifier(teacher).weight.detach()
        elif self.label_embedding == "onehot":
            table = torch.eye(num_classes)
        else:
            if len(self.class_names) != num_classes:
                raise ConfigError(f"method.synthesizer.class_names has {len(self.class_names)} names for "
                                 f"{num_classes} classes")
            table = text_embedding(self.text_encoder, self.class_names, self.prompt)
        self.register_buffer("embedding", scaled_rows(table), persistent=False)

    def new_noisy_layer(self, copies: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh weights (N(0, 1/dim)) and zero biases of ``copies`` noisy layers."""
        dim = self.embedding.shape[1]
        weight = self.randn(copies, dim, self.nz, device=device) / math.sqrt(dim)
        bias = torch.zeros(copies, self.nz, device=device)
        return weight.requires_grad_(), bias.requires_grad_()

    def renew_generator(self, epoch: int):
        """Re-initialise the generator (and a learned embedding) when ``epoch`` enters a new
        g_life period."""
        life = epoch // self.g_life
        if life == self.life:
            return
        self.reinitialise(self.generator)
        if self.label_embedding == "learned":
            with torch.no_grad():
                self.embedding.copy_(self.randn(*self.embedding.shape, device=self.embedding.device))
        self.life = life

    def step_inputs(self, ctx, x, targets, bn):
        return {**super().step_inputs(ctx, x, targets, bn), "label_smoothing": self.label_smoothing}

    def make(self, ctx):
        self.renew_generator(ctx.epoch)
        n = ctx.batch_size
        targets = round_targets(n, self.num_classes, self.rng).to(ctx.device)
        copy = (torch.arange(n) // self.num_classes).to(ctx.device)
        weight, bias = self.new_noisy_layer(math.ceil(n / self.num_classes), ctx.device)
        embedding = self.embedding.to(ctx.device)

        def generate(classes):  # what optimise calls in place of generator(z)
            noise_input = torch.bmm(embedding[classes].unsqueeze(1), weight[copy]).squeeze(1) + bias[copy]
            return self.generator(noise_input)

        groups = [{"params": self.generator.parameters(), "lr": self.lr_g},
                  {"params": [weight, bias], "lr": self.lr_z}]
        if self.label_embedding == "learned":
            groups.append({"params": [self.embedding], "lr": self.lr_g})
        inner = torch.optim.Adam(groups, betas=self.betas)
        images, self.last_terms = self.optimise(ctx, generate, targets, targets, self.g_steps, [inner])
        return images, None

    def get_extra_state(self):
        return {**super().get_extra_state(), "life": self.life}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.life = state["life"]
