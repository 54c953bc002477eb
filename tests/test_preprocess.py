import numpy as np
import pytest
import torch
from skimage import color

from zoo import UsageError, get_model_entry, preprocess
from zoo.photos import load_photo, photo_paths, read_image
from zoo.preprocess import rgb_to_lab
from zoo.registry import InputSpec


def test_shipped_photos_are_real_colour_images():
    paths = photo_paths()
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= set(paths)
    img = load_photo("chelsea")
    assert img.dtype == np.uint8 and img.shape == (300, 451, 3) and img.std() > 20


def test_rgb_to_lab_matches_skimage():
    img = load_photo("coffee")[::8, ::8]
    ours = rgb_to_lab(torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, color.rgb2lab(img), atol=1e-3)


def test_preprocess_resizes_crops_and_normalises():
    spec = get_model_entry("rotnet_alexnet").input
    img = np.full((300, 400, 3), 255, dtype=np.uint8)
    batch = preprocess([img, img], spec)
    assert batch.shape == (2, 3, 224, 224)
    expected = (1 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(batch[0, :, 100, 100].numpy(), expected, rtol=1e-5)


def test_grey_bgr_and_caffe_range():
    img = np.zeros((40, 40, 3), dtype=np.uint8)
    img[..., 0] = 255  # pure red
    grey = preprocess(img, InputSpec(size=32, resize=32, colour_space="grey", mean=(0.0,), std=(1.0,)))
    assert grey.shape == (1, 1, 32, 32) and grey[0, 0, 5, 5].item() == pytest.approx(0.299, abs=1e-6)
    bgr = preprocess(img, InputSpec(size=32, resize=32, colour_space="bgr", value_range=255.0,
                                    mean=(0, 0, 0), std=(1, 1, 1)))
    assert bgr[0, :, 5, 5].tolist() == pytest.approx([0.0, 0.0, 255.0], abs=1e-3)


def test_bad_images_are_one_line_errors(tmp_path):
    from zoo import ZooError

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ZooError, match="cannot read image"):
        read_image(bad)
    spec = get_model_entry("rotnet_alexnet").input
    with pytest.raises(UsageError, match=r"values in \[0, 1\], got 255\.\.255; divide 0-255 values by 255"):
        preprocess(np.full((10, 10, 3), 255.0, dtype=np.float32), spec)
    normalised = preprocess(np.zeros((10, 10, 3), np.uint8), spec)[0]  # black is about -2 after mean/std
    with pytest.raises(UsageError, match="before mean/std normalisation"):
        preprocess(normalised, spec)
    with pytest.raises(UsageError, match=r"values in \[0, 1\], got nan"):
        preprocess(torch.full((3, 10, 10), float("nan")), spec)
    with pytest.raises(UsageError, match="got int64"):
        preprocess(np.zeros((10, 10, 3), dtype=np.int64), spec)
    with pytest.raises(UsageError, match=r"a \(C, H, W\) tensor with 1, 3 or 4 channels, got shape \(10, 12, 3\)"):
        preprocess(torch.zeros(10, 12, 3, dtype=torch.uint8), spec)  # tensors are CHW, as in torchvision
    with pytest.raises(UsageError, match="got str"):
        preprocess("chelsea.jpg", spec)


def test_preprocess_takes_pil_images_arrays_tensors_and_lists(tmp_path):
    from PIL import Image

    spec = get_model_entry("rotnet_alexnet").input
    photo = load_photo("chelsea")  # 300x451 uint8 RGB
    ref = preprocess(photo, spec)
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    same_bits = [Image.fromarray(photo), photo.astype(np.float32) / 255, chw, chw.float() / 255,
                 np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])]  # alpha dropped
    for image in same_bits:  # the same float32 values in [0, 1] reach the same operations
        assert torch.equal(preprocess(image, spec), ref), type(image)
    # float64 values differ from the uint8 ones / 255 in float32 by at most half an ulp (~6e-8) at 1.0,
    # which mean/std normalisation (std >= 0.224) scales by at most 4.5
    torch.testing.assert_close(preprocess(photo / 255.0, spec), ref, rtol=0, atol=1e-6)
    batch = preprocess([photo, Image.fromarray(photo[:, ::-1]), chw], spec)
    assert batch.shape == (3, 3, 224, 224) and torch.equal(batch[0], ref[0]) and torch.equal(batch[2], ref[0])
    assert torch.equal(preprocess(torch.stack([chw, chw]), spec), torch.cat([ref, ref]))  # (N, C, H, W) tensor
    grey = photo.mean(axis=2).astype(np.uint8)
    assert torch.equal(preprocess(grey, spec), preprocess(grey[..., None], spec))
    assert torch.equal(preprocess(grey, spec), preprocess(torch.from_numpy(grey)[None], spec))
    # A PIL image opened by the user is decoded as read_image decodes files: EXIF orientation applied
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(tmp_path / "turned.jpg", exif=exif)
    with Image.open(tmp_path / "turned.jpg") as opened:
        assert torch.equal(preprocess(opened, spec), preprocess(read_image(tmp_path / "turned.jpg"), spec))


@pytest.mark.parametrize("height, width", [(300, 451), (451, 300), (97, 131), (257, 256), (333, 500), (31, 47)])
@pytest.mark.parametrize("resize, size", [(256, 224), (32, 32)])
def test_resize_and_crop_match_torchvision(height, width, resize, size):
    """Resize(int) then CenterCrop, as the authors' torchvision pipelines compute them: the longer side
    is int(resize * long / short), truncated, and the crop offset int(round((side - size) / 2))."""
    from torchvision import transforms as T

    from zoo.preprocess import resize_and_crop, shorter_side_size

    theirs = T.Compose([T.Resize(resize), T.CenterCrop(size)])
    spec = InputSpec(size=size, resize=resize)
    x = torch.from_numpy(np.random.default_rng(height * width).integers(0, 256, (3, height, width), np.uint8))
    assert shorter_side_size(height, width, resize, size) == tuple(T.Resize(resize)(x).shape[-2:])
    # Float tensors: torchvision calls the same interpolate (bilinear, antialias, no corner alignment)
    # on the same sizes, so the pixels agree to float32 rounding.
    torch.testing.assert_close(resize_and_crop(x.float() / 255, spec), theirs(x.float() / 255), rtol=0, atol=1e-6)
    # uint8 tensors: torchvision's uint8 kernel uses fixed-point weights and rounds to the nearest
    # level, each off by at most half a grey level from the float result.
    got = resize_and_crop(x.float() / 255, spec)
    torch.testing.assert_close(got, theirs(x).float() / 255, rtol=0, atol=1 / 255 + 1e-6)
    assert shorter_side_size(300, 451, 256, 224) == (256, 384)  # rounding gave 385


def test_transforms_for_is_a_picklable_torchvision_style_transform(tmp_path):
    import pickle

    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    import zoo

    transform = zoo.transforms_for("rotnet_alexnet")
    assert transform == zoo.transforms_for(get_model_entry("rotnet_alexnet").input)
    assert zoo.transforms_for(zoo.create_model("rotnet_nin_fmnist")) == zoo.transforms_for("rotnet_nin_fmnist")
    assert pickle.loads(pickle.dumps(transform)) == transform and "centre_crop=224" in repr(transform)
    photo = load_photo("chelsea")
    assert torch.equal(transform(photo), preprocess(photo, transform.input)[0])
    assert torch.equal(transform(Image.fromarray(photo)), transform(torch.from_numpy(photo).permute(2, 0, 1)))
    with pytest.raises(UsageError, match="registry name, an sslzoo model or an InputSpec"):
        zoo.transforms_for(42)
    # A real DataLoader whose worker is a fresh interpreter (spawn): the dataset, with the
    # transform, is pickled into it.
    photos = {"cat": photo, "coffee": load_photo("coffee")}
    for name, image in photos.items():
        (tmp_path / name).mkdir()
        Image.fromarray(image).save(tmp_path / name / f"{name}.png")
    loader = DataLoader(ImageFolder(str(tmp_path), transform=transform), batch_size=2, num_workers=1,
                        multiprocessing_context="spawn")
    (batch, labels), = list(loader)
    assert labels.tolist() == [0, 1]
    # Another process, the same operations on the same values: equal to float32 rounding.
    torch.testing.assert_close(batch, preprocess(list(photos.values()), transform.input), rtol=0, atol=1e-6)
