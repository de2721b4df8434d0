# DCFace 0.5M (10,000 identities, 550,000 images), IR-SE-50 + AdaFace, the setting the paper reports:
#     python train_v2.py configs/dcface_adaface_irse50.py
# (torchrun --nproc_per_node=2 for the published 2 x 256 batch).
#
# Source: DCFace (CVPR 2023) trains IR-SE-50 + AdaFace "following DigiFace/SynFace" and does not restate the
# hyper-parameters: they are the AdaFace repository's (configs/_synthetic_10k.py, adaface_irse50, lists
# them and the differences that no key here expresses).
from configs._synthetic_10k import adaface_irse50

config = adaface_irse50("./rec/dcface")
