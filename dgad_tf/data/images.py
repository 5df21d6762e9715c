"""Image files and arrays to uint8 images of one shape: listing, decoding, channels, resizing.

The readers of `dgad_tf.data.sources` that take image files (an image-folder tree, Tiny ImageNet)
list them here (`subdirectories`, `image_files`, sorted so that class indices and image order do
not depend on the file system) and decode them into one uint8 array `[N, H, W, C]`
(`decode_files`: grayscale and colour mixed become colour, alpha dropped, or a fixed number of
channels). `resize_image` is the one resize of the package (bilinear, antialiased, rounded back to
uint8): TFDS images are resized with it as they stream, and `dgad_tf.data.load_splits` resizes
whole arrays with `resize_uint8`. TensorFlow is imported by the functions that decode or resize,
not at import time.
"""

from __future__ import annotations

import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def subdirectories(directory):
    """The names of the folders in `directory`, sorted (the class order of a folder tree)."""
    return sorted(e for e in os.listdir(directory) if os.path.isdir(os.path.join(directory, e)))


def image_files(directory):
    """The paths of the `IMAGE_EXTENSIONS` files in `directory`, sorted."""
    return sorted(
        os.path.join(directory, f)
        for f in os.listdir(directory)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, f))
    )


def decode_files(files, image_size, channels=None):
    """Decode image files to one uint8 array [N, H, W, C] in the order given.

    Without `channels`, a mix of grayscale and colour files becomes colour (alpha is dropped).
    Without `image_size`, all files must share one height and width.

    Args:
        files: image file paths (PNG, JPEG, ...), not empty.
        image_size: resize each image to this square size with `resize_image`; None keeps
            the files' own size.
        channels: decode to this many channels (3 turns grayscale into colour). Defaults to
            None (see above).

    Raises:
        ValueError: no files, a file that does not decode, or sizes that differ without
            `image_size`.
    """
    import tensorflow as tf

    if not files:
        raise ValueError("no image files to decode")

    def decode(file_path):
        image = tf.io.decode_image(
            tf.io.read_file(file_path), channels=channels or 0, expand_animations=False
        )
        return image if image_size is None else resize_image(image, image_size)

    dataset = tf.data.Dataset.from_tensor_slices(files).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    images = []
    try:
        for image in dataset.as_numpy_iterator():
            images.append(image)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"could not decode image {files[len(images)]!r}: {err.message}") from err
    if channels is None:
        # Gray+alpha (2) counts as gray, RGBA (4) as colour.
        target = 3 if any(im.shape[-1] >= 3 for im in images) else 1
        images = [_to_channels(im, target) for im in images]
    reference = images[0].shape
    for file_path, image in zip(files, images):
        if image.shape != reference:
            raise ValueError(
                f"image {file_path!r} has shape {image.shape}, but {files[0]!r} has {reference}; "
                "pass `image_size` to resize all images to one size"
            )
    return np.stack(images)


def _to_channels(image, target):
    if image.shape[-1] in (2, 4):
        image = image[..., :-1]
    if image.shape[-1] == 1 and target == 3:
        image = np.repeat(image, 3, axis=-1)
    return image


def resize_image(image, size):
    """Bilinear, antialiased resize of uint8 image(s) to size x size, rounded back to uint8."""
    import tensorflow as tf

    resized = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def resize_uint8(x, size, chunk=4096):
    """`resize_image` of uint8 images `x` [N, H, W, C], as a NumPy array, `chunk` at a time.

    Args:
        x: uint8 images.
        size: the square size to resize to.
        chunk: how many images are resized at once (bounds the float32 copy). Defaults to 4096.
    """
    out = np.empty((len(x), size, size, x.shape[-1]), np.uint8)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = resize_image(x[start : start + chunk], size).numpy()
    return out
