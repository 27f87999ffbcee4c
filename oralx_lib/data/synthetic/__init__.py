"""A procedural generator of OralXrays-9-like panoramic X-rays, in the released COCO layout.

One module per idea: :mod:`~.settings` (defaults, file names, version), :mod:`~.scene` (what is
random about one image), :mod:`~.geometry` (a tooth's frame, soft masks), :mod:`~.anatomy`,
:mod:`~.teeth` (one drawing function per tooth state), :mod:`~.render` (one image) and
:mod:`~.writer` (the set on disk).

The real archive cannot be downloaded everywhere (it is a password-protected Google Drive folder),
so the book, the tests and CI run on a synthetic set that this module writes in the same layout::

    out/annotations/instances_{train,val,test}2017.json   COCO, boxes [x, y, w, h] in pixels
    out/{train,val,test}2017/000001.jpg ...               8-bit grayscale JPEG
    out/SYNTHETIC.json                                    the generator's parameters (written last)

What an image holds
-------------------
A panoramic radiograph is a curved tomogram of both jaws unrolled onto a plane. Each image draws,
in an *attenuation* map ``A`` (arbitrary units; brighter = denser):

- soft tissue of the head, darker corners, the ghosts of the cervical spine at both edges and its
  double image in the midline;
- the mandible (U-shaped lower border with a bright cortex, rami and condyles, the mandibular
  canal), the maxilla with the hard palate, both maxillary sinuses, the nasal cavity with its
  septum, the zygomatic arches and the dark palatoglossal air space; band-pass noise inside bone
  gives the trabecular texture;
- 32 tooth positions along a smile-shaped occlusal curve
  ``y_occ(x) = y0 - c ((x - cx) / 0.3 W)^2``; upper teeth point their roots up, lower teeth down.
  A tooth is drawn in its own frame ``(s, t)`` (``s`` across the tooth, ``t`` from the occlusal
  surface to the apex): crown ``|s| <= w/2 (1 - k (t/h_c)^2)`` below an occlusal profile with
  cusps, enamel (the brightest natural tissue) as the outer shell of the crown, dentine, a darker
  pulp chamber and canals, 1-3 tapering roots ``r(tau) = r0 sqrt(1 - tau^3) (1 - 0.3 tau)``
  with a dark periodontal ligament and a bright lamina dura around them.

The image is ``I = 1 - exp(-k A)`` with a random exposure ``k``, an unsharp mask (the edge
enhancement of clinical software), a random gamma, blur and grain.

The nine anomalies (names from :data:`oralx_lib.CLASSES`) each have their own signature, and each
box is the tight box of the drawn mask (pixels with coverage >= 0.5), never of nominal parameters:

=====================  ==========================================================================
Apical Periodontitis   a dark, irregular halo around one root apex (bone removed, root kept)
Decay                  a dark irregular spot in a crown, proximal (60 %) or occlusal (40 %)
Wisdom Tooth           a third molar (position 8), often tilted and partly erupted; box = tooth
Missing Tooth          a gap in the row, the alveolar crest dips; box = the empty crown space
Dental Filling         a very bright irregular blob in a crown (occlusal, class II or cervical)
Root Canal Filling     very bright thin lines along the root canals; box = the lines
Implant                a bright threaded screw with an abutment and no root; box = screw+abutment
Porcelain Crown        a bright cap over a crown (also on implants); box = the cap
Ceramic Bridge         bright caps over 3-4 teeth joined over pontics without roots; box = caps
=====================  ==========================================================================

Frequencies follow a long tail like the real set (per image on average, measured on 300 images
at 512 x 290: 1.78 fillings, 1.21 decay, 1.07 wisdom teeth, 1.06 missing teeth, 0.71 root canal
fillings, 0.44 porcelain crowns, 0.36 apical lesions, 0.11 implants, 0.057 bridges: 6.8 boxes
per image, 1 % of images without any; head/tail 31). With so few rare boxes a 40-image
validation split cannot measure a rare class (one implant, four bridges); ``--rare-eval``
(``min_boxes_per_class_eval=50``) adds images to the validation and test splits until every
class has 50 boxes there, leaving the training split's long tail as it is. Sizes span small lesions to bridges: the
5th and 95th percentiles of ``sqrt(w h)`` are 6 and 73 px at 1024 x 580 (12x). A per-image
"dental condition" ``c ~ Gamma(3, 1/3)`` scales the disease and treatment rates, so some mouths
are clean and some heavily restored.

Determinism and independence
----------------------------
Image ``i`` (0-based) of split ``s`` is drawn from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(split_index, i)))``: the same seed gives
byte-identical files, an image does not depend on the split sizes, and images can be generated
in any order. The scene (anatomy and anomalies) is drawn in resolution-independent units before
any pixel, so the same seed at another size gives the same mouth at another resolution.

Defaults (:data:`DEFAULTS`)
---------------------------
``1024 x 580`` keeps the real images' aspect ratio (about 1991 x 1127, 1.77:1) at a size where a
tooth is 25-50 px wide, small lesions are 8-15 px, and a tiny detector trains on a CPU.
``train=160, val=40, test=40`` (240 images) generates in about 20 s on one free core
(``benchmarks/bench_synthetic.py``: ~13 images/s rendered and written at this size, ~4.4 at
1991 x 1127), "well under a minute" for the book build and CI, yet it holds ~1,100 training
boxes, enough for each chapter's tiny model to see every signature. ``seed=0``.
"""

from ..dataset import SPLITS
from .render import image_rng, render_panoramic
from .settings import DEFAULTS, DESCRIPTION, GENERATOR_VERSION, MARKER
from .writer import (
    EVAL_SPLITS,
    RARE_EVAL_MIN_BOXES,
    enrichment_rng,
    ensure_synthetic,
    generate_dataset,
    main,
)

__all__ = [
    "DEFAULTS",
    "DESCRIPTION",
    "EVAL_SPLITS",
    "GENERATOR_VERSION",
    "MARKER",
    "RARE_EVAL_MIN_BOXES",
    "SPLITS",
    "enrichment_rng",
    "ensure_synthetic",
    "generate_dataset",
    "image_rng",
    "main",
    "render_panoramic",
]
