# CemiFace (10,000 identities, about 550,000 images), IR-SE-50 + AdaFace, the setting the paper reports:
#     python train_v2.py configs/cemiface_adaface_irse50.py
# (torchrun --nproc_per_node=2 for the published 2 x 256 batch).
#
# Source: CemiFace (NeurIPS 2024) reports IR-SE-50 + AdaFace; its code is based on DCFace's, so the
# setting is DCFace's, i.e. the AdaFace repository's (known from secondary sources, not restated in the paper;
# configs/_synthetic_10k.py, adaface_irse50, lists the values and the differences that no key here expresses).
from configs._synthetic_10k import adaface_irse50

config = adaface_irse50("./rec/cemiface")
