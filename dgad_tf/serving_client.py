"""python -m dgad_tf.serving_client: classify one image with a student served by TF Serving.

Reads a PNG/JPEG/GIF/BMP file, checks that it decodes to an 8-bit image of the size the model
expects (from `--image-size H,W,C`, else from the server's `/metadata`) before anything is sent,
then posts the TF Serving REST `:predict` request for the `serving_default` signature
(`images`, uint8 0..255) and prints the predicted class and its probability.

Exit codes: 0 success, 1 the server failed or answered with an error, 2 bad input (not an image,
wrong size, bad URL or arguments).

Example:
    python -m dgad_tf.serving_client --url http://localhost:8501/v1/models/digits_student \\
        --image digit.png --image-size 8,8,1
"""

import argparse
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

SIGNATURE_NAME = "serving_default"
_URL_FORM = "`url` must be http(s)://host:port/v1/models/NAME"
INPUT_NAME = "images"


class ClientInputError(ValueError):
    """The image, its size or the URL is unusable; nothing was sent."""


class ServerError(RuntimeError):
    """The server could not be reached or answered with an error."""


def predict_url(url):
    """The `:predict` URL for a TF Serving REST model URL.

    Args:
        url: `http(s)://host:port/v1/models/NAME[/versions/N|/labels/L][:predict]`.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ClientInputError(f"{_URL_FORM}; received {url!r}")
    path = parsed.path.rstrip("/")
    if path.endswith(":predict"):
        path = path[: -len(":predict")]
    parts = path.split("/")
    if len(parts) < 4 or parts[1:3] != ["v1", "models"] or not parts[3] or ":" in path:
        raise ClientInputError(f"{_URL_FORM}; received {url!r}")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path + ":predict", "", ""))


def metadata_url(url):
    """The `/metadata` URL for a TF Serving REST model URL.

    Args:
        url: as for `predict_url`.
    """
    return predict_url(url)[: -len(":predict")] + "/metadata"


def parse_image_size(text):
    """(H, W, C) from "H,W,C".

    Args:
        text: three positive integers separated by commas.
    """
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ClientInputError(f"`--image-size` must be H,W,C (positive); received {text!r}")
    return size


def load_image(path, image_size=None):
    """Decode an image file to uint8 [H, W, C] and check its size.

    Args:
        path: PNG, JPEG, GIF or BMP file.
        image_size: expected (H, W, C). Defaults to None (no check).
    """
    # Pillow (installed with tensorboard) decodes in milliseconds; importing TensorFlow only to
    # decode one image cost the client seconds before it even tried the server.
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as handle:
            contents = handle.read()
    except OSError as error:
        raise ClientInputError(f"cannot read `--image` {path!r}: {error.strerror}") from error
    try:
        with Image.open(io.BytesIO(contents)) as decoded:
            if decoded.format not in ("PNG", "JPEG", "GIF", "BMP"):
                raise UnidentifiedImageError(decoded.format)
            if decoded.mode not in ("L", "LA", "RGB", "RGBA", "P", "1"):
                raise ClientInputError(
                    f"`--image` {path!r} must be 8-bit; received pixel mode {decoded.mode}"
                )
            if decoded.mode in ("P", "1"):  # palette (GIF) and bilevel images decode to colours
                decoded = decoded.convert("RGB" if decoded.mode == "P" else "L")
            image = np.asarray(decoded, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ClientInputError(
            f"`--image` {path!r} is not a PNG, JPEG, GIF or BMP image"
        ) from error
    if image.ndim == 2:
        image = image[:, :, None]
    if image_size is not None and tuple(image.shape) != tuple(image_size):
        raise ClientInputError(
            f"`--image` {path!r} is {'x'.join(map(str, image.shape))} (HxWxC) but the model "
            f"expects {'x'.join(map(str, image_size))}; resize it first"
        )
    return image


def build_request(images, signature_name=SIGNATURE_NAME):
    """The TF Serving REST row-format `:predict` body for a batch of uint8 images.

    Args:
        images: uint8 [N, H, W, C].
        signature_name: the signature to call. Defaults to "serving_default".
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ClientInputError(
            f"`images` must be uint8 [N, H, W, C]; received {images.dtype.name} {images.shape}"
        )
    return {"signature_name": signature_name, "instances": images.tolist()}


def _request_json(url, payload=None, timeout=10.0):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if data is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        try:
            body = json.loads(body).get("error", body)
        except (ValueError, AttributeError):
            pass
        raise ServerError(f"{url} answered HTTP {error.code}: {body}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ServerError(f"request to {url} failed: {error}") from error


def expected_image_size(url, timeout=10.0):
    """(H, W, C) of the `serving_default` input, read from the server's model metadata.

    Args:
        url: model URL, as for `predict_url`.
        timeout: seconds. Defaults to 10.
    """
    metadata = _request_json(metadata_url(url), timeout=timeout)
    try:
        spec = metadata["metadata"]["signature_def"]["signature_def"][SIGNATURE_NAME]
        dims = spec["inputs"][INPUT_NAME]["tensor_shape"]["dim"]
        size = tuple(int(d["size"]) for d in dims[1:])
    except (KeyError, TypeError, ValueError) as error:
        raise ServerError(f"no `{INPUT_NAME}` input in the metadata of {url}") from error
    if len(size) != 3 or min(size) < 1:
        raise ServerError(f"the served model's input is not [N, H, W, C]: {size}")
    return size


def predict(url, images, timeout=10.0):
    """Class and probabilities for each image from a TF Serving `:predict` endpoint.

    Args:
        url: model URL, as for `predict_url`.
        images: uint8 [N, H, W, C].
        timeout: seconds. Defaults to 10.

    Returns:
        A list of {"class": int, "probability": float, "probabilities": list}.
    """
    response = _request_json(predict_url(url), build_request(images), timeout=timeout)
    if "predictions" not in response:
        raise ServerError(f"no `predictions` in the answer: {str(response)[:200]}")
    results = []
    for prediction in response["predictions"]:
        probabilities = np.asarray(prediction["probabilities"], dtype=np.float64)
        predicted = int(prediction.get("classes", probabilities.argmax()))
        results.append(
            {
                "class": predicted,
                "probability": float(probabilities[predicted]),
                "probabilities": probabilities.tolist(),
            }
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dgad_tf.serving_client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", required=True, help="http://host:8501/v1/models/NAME[:predict]")
    parser.add_argument("--image", required=True, help="PNG/JPEG file")
    parser.add_argument("--image-size", default=None, help="H,W,C; default: from /metadata")
    parser.add_argument("--labels", default=None, help="comma-separated class names")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        url = predict_url(args.url)
        size = parse_image_size(args.image_size) if args.image_size else None
        if size is None:
            image = load_image(args.image)  # not an image: fail before any request
            size = expected_image_size(args.url, args.timeout)
        image = load_image(args.image, size)
        (result,) = predict(url, image[None], timeout=args.timeout)
    except ClientInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    labels = args.labels.split(",") if args.labels else None
    name = f" ({labels[result['class']]})" if labels and result["class"] < len(labels) else ""
    print(f"class {result['class']}{name} probability {result['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
