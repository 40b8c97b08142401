"""The image pool: capacity, uniform draws, soft targets, and a state that round-trips."""

import pytest
import torch

from dfkd_lab.config import ConfigError
from dfkd_lab.synthesis.pool import ImagePool


def batch(start, n):
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def test_capacity_drops_the_oldest():
    pool = ImagePool(capacity=5)
    pool.add(batch(0, 3))
    pool.add(batch(3, 4))
    assert len(pool) == 5
    images, soft = pool.sample(200, torch.Generator().manual_seed(0))
    assert soft is None
    assert set(images[:, 0, 0, 0].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    assert pool.newest(2)[:, 0, 0, 0].tolist() == [5.0, 6.0]


@pytest.mark.parametrize("capacity", [0, -3, None, 2.5])
def test_capacity_is_a_number_of_images_of_at_least_one(capacity):
    with pytest.raises(ConfigError, match="synthesizer.capacity"):
        ImagePool(capacity)


def test_storage_never_outgrows_the_capacity():
    pool = ImagePool(capacity=10)
    for start in range(0, 60, 7):
        pool.add(batch(start, 7))
        assert pool._images.shape[0] <= 10
    assert len(pool) == 10 and pool.newest(10)[:, 0, 0, 0].tolist() == [float(v) for v in range(53, 63)]


def test_a_pool_below_its_capacity_keeps_everything_and_samples_uniformly():
    pool = ImagePool(capacity=1000)
    for i in range(10):
        pool.add(batch(10 * i, 10))
    images, _ = pool.sample(20000, torch.Generator().manual_seed(0))
    counts = torch.bincount(images[:, 0, 0, 0].long(), minlength=100).float()
    assert len(pool) == 100 and (counts > 0).all()
    assert counts.max() / counts.min() < 2.0


def test_soft_targets_travel_with_their_images():
    pool = ImagePool(capacity=4)
    pool.add(batch(0, 3), torch.arange(3.0)[:, None].expand(3, 2))
    pool.add(batch(3, 3), torch.arange(3.0, 6.0)[:, None].expand(3, 2))
    images, soft = pool.sample(50, torch.Generator().manual_seed(1))
    assert torch.equal(images[:, 0, 0, 0], soft[:, 0])
    with pytest.raises(ValueError, match="soft targets"):
        pool.add(batch(0, 2))


def test_state_round_trip_gives_the_same_draws():
    pool = ImagePool(capacity=7)
    pool.add(batch(0, 4), torch.rand(4, 3))
    pool.add(batch(4, 5), torch.rand(5, 3))
    other = ImagePool(capacity=7)
    other.load_state_dict(pool.state_dict())
    assert len(other) == len(pool) == 7 and other.capacity == 7
    a = pool.sample(16, torch.Generator().manual_seed(3))
    b = other.sample(16, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    empty = ImagePool(capacity=7)
    empty.load_state_dict(ImagePool(capacity=7).state_dict())
    assert len(empty) == 0
    with pytest.raises(ConfigError, match="resume with method.synthesizer.capacity=7"):
        ImagePool(capacity=8).load_state_dict(pool.state_dict())
    with pytest.raises(RuntimeError, match="empty"):
        empty.sample(1, torch.Generator())


def test_a_full_pool_overwrites_the_oldest_in_place_and_resumes_the_ring():
    pool = ImagePool(capacity=4)
    for start in range(0, 10, 2):  # 0..9 added two at a time: 6, 7, 8, 9 remain
        pool.add(batch(start, 2))
    assert len(pool) == 4
    assert sorted(pool.sample(100, torch.Generator().manual_seed(0))[0][:, 0, 0, 0].unique().tolist()) == [6, 7, 8, 9]
    assert pool.newest(3)[:, 0, 0, 0].tolist() == [7.0, 8.0, 9.0]
    other = ImagePool(capacity=4)
    other.load_state_dict(pool.state_dict())
    for p in (pool, other):
        p.add(batch(10, 1))
        assert p.newest(4)[:, 0, 0, 0].tolist() == [7.0, 8.0, 9.0, 10.0]
    big = ImagePool(capacity=3)
    big.add(batch(0, 5))  # more than fits at once: the newest three
    assert big.newest(3)[:, 0, 0, 0].tolist() == [2.0, 3.0, 4.0]


def test_a_checkpoint_from_before_pools_had_a_capacity_loads_its_newest_images():
    old_state = {"capacity": None, "images": batch(0, 6), "soft_targets": None, "next": 6}
    pool = ImagePool(capacity=4)
    pool.load_state_dict(old_state)
    assert len(pool) == 4 and pool.newest(4)[:, 0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    pool.add(batch(6, 1))
    assert pool.newest(4)[:, 0, 0, 0].tolist() == [3.0, 4.0, 5.0, 6.0]


def test_restore_from_images_in_the_order_they_were_added_rebuilds_a_wrapped_ring():
    pool = ImagePool(capacity=5)
    for start in range(0, 13, 3):  # 0..14: the ring wrapped twice, 10..14 remain
        pool.add(batch(start, 3))
    other = ImagePool(capacity=5)
    other.restore(pool.index_state(), batch(10, 5), None)
    a, b = (p.sample(30, torch.Generator().manual_seed(2))[0] for p in (pool, other))
    assert torch.equal(a, b)
    assert pool.index_state() == other.index_state() == {"capacity": 5, "size": 5, "next": 0}
