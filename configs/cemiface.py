# CemiFace: 10,000 identities, about 550,000 aligned 112x112 images (the seed README's "10K / 0.55M").
# IR-50 ArcFace on one GPU, the seed's comparison-table setting (configs/_synthetic_10k.py, seed_ir50,
# gives each hyper-parameter's reason):
#     python train_v2.py configs/cemiface.py
# Data folder ./rec/cemiface: train.rec + train.idx packed by `python -m im2rec`,
# and the five verification files lfw.bin, cfp_fp.bin, agedb_30.bin, cplfw.bin, calfw.bin.
#
# - 550,000 // 128 = 4,296 steps per epoch, 111,696 in all; verbose 4000 runs
#   the five benchmarks about once per epoch.
# - num_classes / num_image "auto" (expected 10,000 / 550,000). The seed fork's config for this
#   set is not published; its dcface.py and vec2face.py used the settings below.
#   To repeat the seed fork's settings (lr 0.02, 30 epochs, no warm-up):
#     python train_v2.py configs/cemiface.py --set lr=0.02 num_epoch=30 warmup_epoch=0
from configs._synthetic_10k import seed_ir50

config = seed_ir50("./rec/cemiface")
