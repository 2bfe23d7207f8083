"""Which weights format a file holds, from its content (and its extension for pickles)."""

import os
import zipfile

from tsm_keras.convert.converted import ConversionError

FORMATS = {
    "keras": ".keras model from this project (architecture + weights)",
    "keras-weights": ".weights.h5 saved from this project's model (with the .architecture.json --mode=convert "
                     "writes beside it, or the same architecture arguments)",
    "paddle": "PaddleVideo .pdparams: ResNet-TSM, PP-TSM (ResNet-vd) or ppTSM_mv2 (MobileNetV2), structured or "
              "parameter names",
    "pytorch": "official TSM PyTorch .pth / .pth.tar, ResNet or MobileNetV2 (needs torch)",
    "keras-applications": "keras.applications ResNet50/101 .h5",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# torch.save's legacy (non-zip) files start by pickling this magic number (protocol 2, a long).
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def detect_format(path):
    """One of FORMATS' keys, from the file's content (and its extension for pickles)."""
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise ConversionError(f"{path} is a folder; pass a weights file ({', '.join(FORMATS.values())}).")
    with open(path, "rb") as f:
        head = f.read(16)
    lower = path.lower()
    if head.startswith(_HDF5_MAGIC):
        return _detect_hdf5(path)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:
            raise damaged_weights_error(path, error) from None
        if "config.json" in names and "model.weights.h5" in names:
            return "keras"
        if any(name.endswith("data.pkl") for name in names):
            return "pytorch"
        raise ConversionError(f"{path}: a zip archive that is neither a .keras model nor a torch.save file.")
    if head.startswith(_TORCH_LEGACY_MAGIC) or (head[:1] == b"\x80" and lower.endswith((".pth", ".pth.tar", ".pt"))):
        return "pytorch"
    if head[:1] == b"\x80":
        return "paddle"
    raise ConversionError(f"{path}: unknown weights format (not HDF5, zip or pickle). Accepted: "
                          + "; ".join(FORMATS.values()) + ".")


def damaged_weights_error(path, error):
    """The error for a weights file whose container (HDF5, zip) does not open: cut short or damaged."""
    return ConversionError(f"{path}: the file is damaged or incomplete ({error}); copy or download it again, or "
                           "write it again from its source.")


def _detect_hdf5(path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise damaged_weights_error(path, error) from None
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in group.attrs:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
            if "conv1_conv" in names:
                return "keras-applications"
            raise ConversionError(f"{path}: a legacy Keras HDF5 file whose layers ({', '.join(names[:5])} ...) "
                                  "are not a keras.applications ResNet.")
        if "layers" in f:
            convs = [n for n in f["layers"] if n.startswith("conv2d")]
            if convs and "vars/1" in f["layers"][convs[0]]:  # convs with bias: keras.applications
                return "keras-applications"
            return "keras-weights"
    raise ConversionError(f"{path}: an HDF5 file that holds no Keras weights.")
