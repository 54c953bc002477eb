"""The one image decoder (zoo.photos.read_image): bit depths, orientation, size caps, file names."""

import os

import numpy as np
import pytest
from PIL import Image

from zoo.errors import ZooError
from zoo.photos import read_image


def test_16_bit_float_and_rotated_images_decode_as_they_look(tmp_path):
    Image.fromarray(np.full((4, 6), 32768, np.uint16)).save(tmp_path / "grey16.png")  # mid-grey, 16 bits
    Image.fromarray(np.full((4, 6), 0.5, np.float32)).save(tmp_path / "float.tiff")  # mid-grey, float in [0, 1]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned, show rotated by 90 degrees
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    for name in ("grey16.png", "float.tiff"):
        image = read_image(tmp_path / name)
        assert image.shape == (4, 6, 3) and image.dtype == np.uint8 and np.all(np.abs(image.astype(int) - 128) <= 1)
    assert read_image(tmp_path / "turned.jpg").shape == (6, 4, 3)


def test_training_decodes_with_the_same_decoder(tmp_path):
    from training.data import decode_image

    Image.fromarray(np.full((4, 6), 0.5, np.float32)).save(tmp_path / "float.tiff")
    assert decode_image(tmp_path / "float.tiff").permute(1, 2, 0).numpy().tolist() == \
        read_image(tmp_path / "float.tiff").tolist()


def test_elongated_images_are_refused_before_they_are_resized(tmp_path):
    import zoo

    Image.fromarray(np.zeros((1, 8000, 3), np.uint8)).save(tmp_path / "strip.png")
    with pytest.raises(ZooError, match="is 8000x1 pixels"):
        read_image(tmp_path / "strip.png")
    with pytest.raises(ZooError, match="is 8000x1 pixels"):  # arrays given directly are checked too
        zoo.preprocess([np.zeros((1, 8000, 3), np.uint8)], zoo.get_model_entry("rotnet_alexnet").input)


def test_any_file_name_is_one_id_and_finds_its_file(tmp_path):
    from export.embedding import build_embedding_model, load_backbone, prepare_image
    from export.engines import TorchEngine
    from export.extract import extract, load_embeddings, unescape_id

    folder = tmp_path / "images"
    folder.mkdir()
    names = [os.fsdecode(b"latin1-\xe9t\xe9.png"), "cr\rlf.png", "form\ffeed.png", "nel\x85.png", "ls\u2028ps\u2029.png",
             "new\nline.png", "tab\t.png", "back\\slash.png", "plain.png"]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / name)
    backbone, weights = load_backbone("random:rotnet_nin_fmnist")
    engine = TorchEngine(*build_embedding_model(backbone, "rotnet_nin_fmnist", weights, layer="block1"))
    summary = extract(engine, [folder], tmp_path / "emb", progress=False, workers=0)
    emb, ids, _ = load_embeddings(tmp_path / "emb")
    assert summary["count"] == len(names) == len(ids) and summary["failed"] == 0
    assert (tmp_path / "emb" / "ids.txt").read_text(encoding="utf-8").count("\n") == len(names)
    assert sorted(unescape_id(i) for i in ids) == sorted(str(folder / n) for n in names)
    for row, file_id in zip(emb, ids):
        path = unescape_id(file_id)
        direct = engine.embed(prepare_image(read_image(path), engine.spec.input, "uint8")[None])[0]
        assert np.abs(row - direct).max() < 1e-6


def test_cmyk_palette_alpha_and_grey_images_decode_to_their_colours(tmp_path):
    """Every Pillow mode a phone, a scanner or a web page writes comes out as (H, W, 3) uint8 RGB with
    the colours it shows; alpha is dropped as torchvision's and timm's loaders drop it."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    rgb[:, 3:] = (20, 180, 240)
    image = Image.fromarray(rgb)
    rgba = np.dstack([rgb, np.full((4, 6), 0, np.uint8)])  # fully transparent: the colour is still the pixel's
    files = {"cmyk.jpg": image.convert("CMYK"), "cmyk.tiff": image.convert("CMYK"), "palette.png": image.quantize(4),
             "palette.gif": image.quantize(4), "rgba.png": Image.fromarray(rgba), "rgba.tiff": Image.fromarray(rgba)}
    for name, img in files.items():
        img.save(tmp_path / name, **({"quality": 100} if name.endswith(".jpg") else {}))
        decoded = read_image(tmp_path / name)
        assert decoded.shape == (4, 6, 3) and decoded.dtype == np.uint8, name
        # exact, but for JPEG's lossy coding (a few levels at quality 100 on a 4x6 image; never another colour)
        assert np.abs(decoded.astype(int) - rgb).max() <= (8 if name.endswith(".jpg") else 0), (name, decoded[0])
    grey = np.full((4, 6), 77, np.uint8)
    for name, img in {"grey.png": Image.fromarray(grey), "grey-alpha.png": Image.fromarray(grey).convert("LA"),
                      "grey16be.tiff": Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2"))}.items():
        img.save(tmp_path / name)
        assert read_image(tmp_path / name).tolist() == np.repeat(grey[..., None], 3, axis=2).tolist(), name
