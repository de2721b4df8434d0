# UIFace: 10,000 identities, about 500,000 aligned 112x112 images (the seed README's "10K / 0.50M").
# IR-50 ArcFace on one GPU, the seed's comparison-table setting (configs/_synthetic_10k.py, seed_ir50,
# gives each hyper-parameter's reason):
#     python train_v2.py configs/uiface.py
# Data folder ./rec/uiface: train.rec + train.idx packed by `python -m im2rec`,
# and the five verification files lfw.bin, cfp_fp.bin, agedb_30.bin, cplfw.bin, calfw.bin.
#
# - 500,000 // 128 = 3,906 steps per epoch, 101,556 in all; verbose 4000 runs
#   the five benchmarks about once per epoch.
# - num_classes / num_image "auto" (expected 10,000 / 500,000). The seed fork's config for this
#   set is not published; its dcface.py and vec2face.py used the settings below.
#   To repeat the seed fork's settings (lr 0.02, 30 epochs, no warm-up):
#     python train_v2.py configs/uiface.py --set lr=0.02 num_epoch=30 warmup_epoch=0
from configs._synthetic_10k import seed_ir50

config = seed_ir50("./rec/uiface")
