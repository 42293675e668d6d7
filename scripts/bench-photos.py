#!/usr/bin/env python3
"""Makes the load benchmark's extra inputs from the shared benchmark photos, deterministically:

- phone-upright.jpg: a 12 MP phone photo held upright, as a phone camera writes it: 4032x3024 pixels stored
  sideways, EXIF orientation 6 (rotate 90 degrees clockwise to view), GPS position, sensor grain, quality 92;
- phone-plain.jpg: the same scene stored upright (3024x4032, no EXIF), to compare the two;
- phone.heic: the same photo as an iPhone saves it, HEIC (libheif and x265 through pillow-heif): stored
  sideways with its rotation in the container (irot) and its EXIF (GPS) in an Exif item;
- phone.avif: the same photo as AVIF (libavif, through Pillow), 8 bits 4:2:0, likewise;
- large-10mb.png: about 10 MB of incompressible pixels, for the burst of large uploads.
- large-15mb.png: about 15 MB of the same, for the burst under 500 idle connections.

    bench-photos.py SOURCE_DIR OUT_DIR
"""
import os
import random
import sys

import pillow_heif
from PIL import Image, ImageChops

source, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)

# The upright scene is 3024 wide and 4032 tall; the sensor stores it rotated, and EXIF says how to turn it.
upright = Image.open(os.path.join(source, "astronaut_4000x3000.jpg")).convert("RGB").resize((3024, 4032))
# Sensor grain, so the file is as large as a phone's (3-4 MB), not a smooth upscale's.
grain = Image.effect_noise((3024, 4032), 5).convert("RGB")
upright = ImageChops.add(upright, grain, scale=1.0, offset=-128)
stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: orientation 6 turns it back
exif = Image.Exif()
exif[0x0112] = 6  # Orientation
exif[0x010F] = "Upshot bench camera"  # Make
gps = exif.get_ifd(0x8825)
gps.update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
stored.save(os.path.join(out, "phone-upright.jpg"), quality=92, exif=exif, subsampling="4:2:0")
upright.save(os.path.join(out, "phone-plain.jpg"), quality=92, subsampling="4:2:0")
# The sideways pixels as they are (not turned by Pillow): libheif writes orientation 6 as the rotation (irot).
heif = pillow_heif.from_bytes(mode="RGB", size=stored.size, data=stored.tobytes())
heif.save(os.path.join(out, "phone.heic"), quality=80, exif=exif.tobytes())
stored.save(os.path.join(out, "phone.avif"), quality=80, exif=exif.tobytes())

random.seed(10)
side = 1830  # 1830 * 1830 * 3 bytes of noise: a PNG of about 10 MB
noise = Image.frombytes("RGB", (side, side), random.randbytes(side * side * 3))
noise.save(os.path.join(out, "large-10mb.png"), compress_level=1)
side = 2240  # about 15 MB, for the hostile burst
noise = Image.frombytes("RGB", (side, side), random.randbytes(side * side * 3))
noise.save(os.path.join(out, "large-15mb.png"), compress_level=1)
for name in ("phone-upright.jpg", "phone-plain.jpg", "phone.heic", "phone.avif", "large-10mb.png", "large-15mb.png"):
    print(f"{name}: {os.path.getsize(os.path.join(out, name))} bytes", file=sys.stderr)
