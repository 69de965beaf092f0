"""Configs of the evaluator models (architecture only; training lives in :mod:`.train`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from debias3d.config import check_bounds

__all__ = ["CLASS_TOKEN_POSITIONS", "DIMENSIONS", "EvaluatorModelConfig", "CLIPHyperScoreConfig"]

#: How the embedded evaluator frames a mesh (:func:`debias3d.models.evaluator.views.evaluator_rig`).
VIEW_FRAMES: tuple[str, ...] = ("unit_sphere", "scene")

#: Quality dimensions, in output column order.
DIMENSIONS: tuple[str, ...] = ("alignment", "geometry", "texture", "overall")


def _check_dims(dims: tuple[str, ...], names: tuple[str, ...], cls: str) -> None:
    if not dims:
        raise ValueError(f"{cls}.dimensions must not be empty")
    if len(names) != len(dims):
        raise ValueError(
            f"{cls}.dimension_prompts has {len(names)} entries for {len(dims)} dimensions {dims}"
        )


@dataclass
class EvaluatorModelConfig:
    """Architecture of the embedded HyperScore-style evaluator (``shapeworld-hyperscore``)."""

    image_size: int = field(default=48, metadata={"help": "render / input size of each view (px), /8"})
    render_size: int = field(
        default=48,
        metadata={"help": "views are rendered at this size, then resized to image_size (as in training)"},
    )
    n_views: int = field(default=6, metadata={"help": "views per mesh (MATE-3D rig: 6)"})
    view_frame: str = field(
        default="unit_sphere",
        metadata={
            "help": "how meshes are framed: 'unit_sphere' (MATE-3D: centred, scaled to radius 1) or "
            "'scene' (not normalised; the cameras frame the scene cube, so size and height above the "
            "ground stay visible, and the CNN reads a crop around each view's silhouette)"
        },
    )
    scene_radius: float = field(
        default=1.45, metadata={"help": "'scene' frame: radius around the origin the views cover"}
    )
    dim: int = field(default=128, metadata={"help": "width D of patch and token features"})
    cnn_widths: tuple[int, int, int] = field(
        default=(24, 48, 96), metadata={"help": "channels of the view CNN's three stride-2 stages"}
    )
    n_ctx: int = field(default=8, metadata={"help": "CoOp context tokens per dimension"})
    quality_dim: int = field(default=64, metadata={"help": "Q, size of the fused quality feature"})
    head_hidden: tuple[int, ...] = field(
        default=(32,), metadata={"help": "hidden sizes of each dimension's generated head psi"}
    )
    hyper_trunk: int = field(default=128, metadata={"help": "width of the hypernetwork pi"})
    dimensions: tuple[str, ...] = field(default=DIMENSIONS, metadata={"help": "output dimensions"})
    dimension_prompts: tuple[str, ...] = field(
        default=("alignment quality", "geometry quality", "texture quality", "overall quality"),
        metadata={"help": "text after the context tokens, one per dimension (MATE-3D's)"},
    )
    text_encoder: str = field(default="minilm", metadata={"help": "frozen text encoder backend"})
    fallback_score: float = field(
        default=0.0, metadata={"help": "score given to items that cannot be rendered (never NaN)"}
    )

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(
                f"EvaluatorModelConfig.image_size must be a positive multiple of 8, got {self.image_size}"
            )
        if self.view_frame not in VIEW_FRAMES:
            raise ValueError(
                f"EvaluatorModelConfig.view_frame must be one of {VIEW_FRAMES}, got {self.view_frame!r}"
            )
        if self.scene_radius <= 0:
            raise ValueError(f"EvaluatorModelConfig.scene_radius must be > 0, got {self.scene_radius}")
        check_bounds(self, ("render_size", "n_views", "dim", "n_ctx", "quality_dim", "hyper_trunk"))
        self.cnn_widths = tuple(self.cnn_widths)
        self.head_hidden = tuple(self.head_hidden)
        self.dimensions = tuple(self.dimensions)
        self.dimension_prompts = tuple(self.dimension_prompts)
        _check_dims(self.dimensions, self.dimension_prompts, "EvaluatorModelConfig")
        if any(w % 8 or w < 8 for w in self.cnn_widths):
            raise ValueError(f"EvaluatorModelConfig.cnn_widths must be multiples of 8, got {self.cnn_widths}")


#: Where the dimension name sits in HyperScore's learned prompt (CoOp ``class_token_position``).
CLASS_TOKEN_POSITIONS: tuple[str, ...] = ("front", "end")


@dataclass
class CLIPHyperScoreConfig:
    """Architecture of the real HyperScore backend on CLIP ViT-B/16 (``hyperscore-clip``).

    Defaults are those of the released HyperScore model (``demo.py``: ``n_ctx=12``,
    ``class_token_position='front'``, class-specific context): CLIP features 512-d, ``fc_quality``
    512→224, ``fc_condition`` 512→112·7·7 feeding a HyperIQA hypernetwork whose target net is
    224→112→56→28→1 with ReLU. Learned prompts are ``[SOS] name ctx×12 . [EOT]`` padded to 77.
    """

    clip_path: str = field(
        default="",
        metadata={
            "help": "transformers CLIP ViT-B/16 folder (config + tokenizer files); relative paths are "
            "read from the converted evaluator folder, which holds a copy in clip/"
        },
    )
    image_size: int = field(default=224, metadata={"help": "view size fed to CLIP (px)"})
    render_size: int = field(
        default=512, metadata={"help": "views are rendered at this size, then resized (HyperScore: 512)"}
    )
    resize_antialias: bool = field(
        default=False,
        metadata={
            "help": "antialias the bilinear resize (HyperScore's torchvision 0.14 does not on tensors)"
        },
    )
    n_views: int = field(default=6, metadata={"help": "views per mesh"})
    n_ctx: int = field(default=12, metadata={"help": "CoOp context tokens per dimension (HyperScore: 12)"})
    class_token_position: str = field(
        default="front",
        metadata={"help": "'front': [SOS] name ctx . [EOT] (HyperScore); 'end': [SOS] ctx name . [EOT]"},
    )
    context_length: int = field(
        default=77, metadata={"help": "every prompt is padded to this many tokens (CLIP: 77)"}
    )
    pad_token_id: int = field(
        default=0, metadata={"help": "id used for padding (OpenAI clip.tokenize pads with 0)"}
    )
    hyper_in_channels: int = field(default=112, metadata={"help": "hypernetwork feature channels"})
    feature_size: int = field(default=7, metadata={"help": "hypernetwork feature map side"})
    target_sizes: tuple[int, ...] = field(
        default=(224, 112, 56, 28),
        metadata={"help": "target net: input size, then hidden sizes (conv-generated); a last layer -> 1"},
    )
    dimensions: tuple[str, ...] = field(default=DIMENSIONS, metadata={"help": "output dimensions"})
    dimension_prompts: tuple[str, ...] = field(
        default=("alignment quality", "geometry quality", "texture quality", "overall quality"),
        metadata={"help": "class names of the learned prompts (HyperScore's quality perspectives)"},
    )
    fallback_score: float = field(default=0.0, metadata={"help": "score for unrenderable items"})

    def __post_init__(self) -> None:
        self.target_sizes = tuple(int(s) for s in self.target_sizes)
        self.dimensions = tuple(self.dimensions)
        self.dimension_prompts = tuple(self.dimension_prompts)
        _check_dims(self.dimensions, self.dimension_prompts, "CLIPHyperScoreConfig")
        if self.class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"CLIPHyperScoreConfig.class_token_position must be one of {CLASS_TOKEN_POSITIONS}, "
                f"got {self.class_token_position!r}"
            )
        if len(self.target_sizes) < 2:
            raise ValueError(
                f"CLIPHyperScoreConfig.target_sizes needs an input and at least one hidden size, "
                f"got {self.target_sizes}"
            )
        check_bounds(
            self, ("image_size", "render_size", "n_views", "n_ctx", "hyper_in_channels", "feature_size")
        )
        if self.context_length < self.n_ctx + 3:
            raise ValueError(
                f"CLIPHyperScoreConfig.context_length {self.context_length} leaves no room for "
                f"{self.n_ctx} context tokens"
            )
        fs2 = self.feature_size**2
        sizes = self.target_sizes
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            if (a * b) % fs2:
                raise ValueError(
                    f"CLIPHyperScoreConfig.target_sizes: {a}*{b} must be divisible by feature_size^2={fs2}"
                )
