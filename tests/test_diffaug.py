"""DiffAugment (sagan_core.diffaug): each operation does what it says, is differentiable, and draws by
(seed, step, slot, side); train_images' subset; the trainer feeds D augmented images and nothing else."""

from __future__ import annotations

import pytest
import torch

from sagan_core.config import ConfigError, make_config
from sagan_core.data import SubsetImages, build_dataset
from sagan_core.diffaug import FAKE, REAL, Draws, augment, color, cutout, draw, translation
from sagan_core.parallel import DistContext

ALL = "color,translation,cutout"


def fixed(batch: int = 1, **values: torch.Tensor) -> Draws:
    """Draws that change nothing, but for `values`."""
    neutral = {"brightness": torch.zeros(batch), "saturation": torch.ones(batch),
               "contrast": torch.ones(batch),
               "shift": torch.zeros(batch, 2, dtype=torch.long), "cutout_corner": torch.full((batch, 2), -99)}
    return Draws(**{**neutral, **values})


def test_neutral_draws_change_nothing() -> None:
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.allclose(augment(images, ALL, fixed(2)), images, atol=1e-6)


def test_translation_moves_the_image_and_pads_with_zeros() -> None:
    images = torch.arange(64.0).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    moved = translation(images, fixed(shift=torch.tensor([[1, -1]])))  # one row down, one column left
    assert torch.equal(moved[0, :, 1:, :-1], images[0, :, :-1, 1:])
    assert moved[0, :, 0, :].abs().sum() == 0 and moved[0, :, :, -1].abs().sum() == 0


def test_cutout_zeroes_a_square_of_half_the_size() -> None:
    images = torch.ones(1, 3, 8, 8)
    cut = cutout(images, fixed(cutout_corner=torch.tensor([[2, 3]])))
    assert torch.equal(cut[0, 0] == 0,
                       torch.zeros(8, 8, dtype=torch.bool).index_fill(0, torch.arange(2, 6), True)
                       & torch.zeros(8, 8, dtype=torch.bool).index_fill(1, torch.arange(3, 7), True))
    assert int((cutout(images, fixed(cutout_corner=torch.tensor([[-2, 6]])))[0,
                                                                             # a corner
                                                                             0] == 0).sum()) == 2 * 2


def test_color_shifts_brightness_and_scales_saturation_and_contrast() -> None:
    images = torch.rand(1, 3, 4, 4) - 0.5
    brighter = color(images, fixed(brightness=torch.tensor([0.25])))
    assert torch.allclose(brighter, images + 0.25)
    grey = color(images, fixed(saturation=torch.tensor([0.0])))
    assert torch.allclose(grey, grey.mean(dim=1, keepdim=True).expand_as(grey), atol=1e-6)
    flat = color(images, fixed(contrast=torch.tensor([0.5])))
    assert torch.allclose(flat.std(), images.std() * 0.5, rtol=1e-4)


@pytest.mark.parametrize("operation", ["color", "translation", "cutout"])
def test_every_operation_is_differentiable(operation: str) -> None:
    images = torch.rand(2, 3, 8, 8, dtype=torch.double, requires_grad=True)
    draws = draw(2, 8, seed=0, step=3, slot=0, side=FAKE)
    assert torch.autograd.gradcheck(lambda x: augment(x, operation, draws), (images,))


def test_draws_are_a_function_of_seed_step_slot_and_side() -> None:
    def draws(**where: int) -> Draws:
        return draw(16, 32, **{"seed": 1, "step": 5, "slot": 0, "side": REAL, **where})

    def same(a: Draws, b: Draws) -> bool:
        return all(torch.equal(getattr(a, name), getattr(b, name)) for name in Draws.__dataclass_fields__)

    assert same(draws(), draws())
    for change in ({"seed": 2}, {"step": 6}, {"slot": 1}, {"side": FAKE}):
        assert not same(draws(), draws(**change)), change
    # A rank's slice is the global batch's: two ranks together augment what one process does.
    images = torch.rand(16, 3, 32, 32)
    whole = augment(images, ALL, draws())
    halves = [augment(images[part], ALL, draws().share(part)) for part in (slice(0, 8), slice(8, 16))]
    assert torch.equal(torch.cat(halves), whole)


def test_the_trainer_augments_only_what_d_sees() -> None:
    from sagan_core.train import for_d

    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    images = torch.rand(4, 3, 32, 32)
    plain = make_config(preset="debug32", batch_size=4)
    assert for_d(plain, ctx, images, 0, 0, REAL) is images  # off: not even a copy
    on = plain.model_copy(update={"diffaug": ALL})
    assert not torch.equal(for_d(on, ctx, images, 0, 0, REAL), images)


def test_the_config_names_a_bad_operation() -> None:
    with pytest.raises(ConfigError, match="diffaug.*unknown operation 'blur'"):
        make_config(diffaug="color,blur")
    with pytest.raises(ConfigError, match="listed twice"):
        make_config(diffaug="cutout,cutout")
    assert make_config(diffaug=" cutout , color").diffaug == "cutout,color"


def test_train_images_keeps_the_same_images_for_every_seed() -> None:
    full = build_dataset("shapes:200", 32)
    subset = SubsetImages(full, 50)
    again = SubsetImages(build_dataset("shapes:200", 32), 50)
    assert len(subset) == 50 and subset.indices == again.indices and subset.indices == sorted(subset.indices)
    assert subset.num_classes == full.num_classes == 3
    assert [subset.label(i) for i in range(5)] == [full.label(j) for j in subset.indices[:5]]
    assert torch.equal(subset[0], full[subset.indices[0]])
    with pytest.raises(ValueError, match="only 200 images"):
        SubsetImages(full, 201)
