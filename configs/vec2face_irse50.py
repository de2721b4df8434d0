# The recipe behind Vec2Face's published HSFace10K numbers (average 92.00 over the five benchmarks),
# next to configs/vec2face.py (the seed's IR-50 setting):
#     python train_v2.py configs/vec2face_irse50.py
#
# What the Vec2Face authors published (github HaiyuWu/Vec2Face: README "FR model training" and its
# HSFace10K config, also in issue #1), trained with their SOTA-Face-Recognition-Train-and-Test code:
#   head arcface, margin 0.5; depth 50 with mode "se"; embedding_size 512; batch_size 128;
#   lr 0.1, momentum 0.9, weight_decay 5e-4; epochs 26; reduce_lr [12, 20, 24] (LR / 10);
#   fp16 True; sample_rate 1.0; num_ims 500000; val_list lfw cfp_fp agedb_30 calfw cplfw;
#   augment True; and torchvision `transforms.RandomErasing()` appended after Normalize, i.e. its
#   defaults: p=0.5, scale (0.02, 0.33), ratio (0.3, 3.3), value 0. Horizontal flip p=0.5. No warm-up.
# Here: the same values with this toolkit's keys (configs/_synthetic_10k.py, common and step_schedule,
# gives the shared ones). Differences that no key here expresses:
# - `augment = True` in that code is AdaFace's Augmenter(0.3, 0.3, 0.3): random-resized crop with
#   zero padding, low-resolution resize, and colour jitter (brightness/contrast/saturation 0.5),
#   each with probability 0.3. Not reproduced (aug_randaugment is a different operation).
# - That code applies the LR drop at the start of 0-based epoch e when e + 1 is in reduce_lr, i.e.
#   after 11, 19 and 23 finished epochs; lr_steps here counts finished epochs: (12, 20, 24) drops
#   one epoch later. Use --set lr_steps=11,19,23 to follow that code to the epoch.
# - Its SGD groups exclude BatchNorm parameters from weight decay.
# The network is that code's, module for module (its model/iresnet.py, `iresnet("50", mode="se")`):
# ir_se50_sotafr, the iResNet-50 with one SE module (reduction 16) gating the downsampled shortcut
# of the first block of each stage and dropout 0.4 before the FC. This differs from ir_se50 (an SE
# module on the residual branch of every block, no dropout), so it has its own name.

from configs._synthetic_10k import common, step_schedule

config = step_schedule(common("./rec/vec2face"))
config.margin_list = (1.0, 0.5, 0.0)
config.network = "ir_se50_sotafr"  # SOTA-FR's iresnet 50, mode "se"
config.batch_size = 128
config.verbose = 4000  # 500,000 // 128 = 3,906 steps per epoch: about one verification per epoch
config.aug_flip = True
config.aug_random_erasing = 0.5
