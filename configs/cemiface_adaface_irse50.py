from easydict import EasyDict as edict

# CemiFace (10,000 identities, about 550,000 images), IR-SE-50 + AdaFace, the setting the paper reports:
#     python train_v2.py configs/cemiface_adaface_irse50.py
# (torchrun --nproc_per_node=2 for the published 2 x 256 batch).
#
# Source: CemiFace (NeurIPS 2024) reports IR-SE-50 + AdaFace; its code is based on DCFace's, so the
# setting is DCFace's, i.e. the AdaFace repository's (known from secondary sources, not restated in the paper).
# The AdaFace repository (mk-minchul/AdaFace, scripts/ and config.py; ../shared/spec/margins.md
# sections 1 and 7): m 0.4, h 0.333, s 64, t_alpha 0.01, 2 GPUs x 256 images, SGD lr 0.1
# (momentum 0.9, weight decay 5e-4), 26 epochs, LR x0.1 after epochs 12, 20 and 24, no warm-up, fp16.
# Differences that no key here expresses:
# - its augmentation (random-resized crop, low-resolution resize, photometric jitter, each with
#   probability 0.2) is not reproduced; its images are BGR (here RGB: irrelevant when training
#   from scratch, relevant when loading its checkpoints);
# - its SGD groups exclude BatchNorm parameters from weight decay;
# - its IR-SE-50 is the InsightFace_Pytorch-style network; ir_se50 here is this toolkit's
#   iResNet-50 with an SE module (reduction 16) on every block (backbones/iresnet.py).
# Statistics of the AdaFace margin are taken over the global batch (all ranks), as in CVLface's
# PartialFC_V2; the reference trainer uses each GPU's own batch (README "Margin heads").

config = edict()
config.margin = "adaface"
config.margin_params = {"m": 0.4, "h": 0.333, "t_alpha": 0.01}
config.margin_scale = 64.0
config.network = "ir_se50"
config.resume = False
config.save_all_states = True
config.output = None  # -> work_dirs/cemiface_adaface_irse50
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.optimizer = "sgd"
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 256
config.lr = 0.1
config.verbose = 2000  # 550,000 // 256 = 2,148 steps per epoch on one GPU: about one verification per epoch
config.frequent = 10
config.dali = False
config.num_workers = 8

config.lr_scheduler = "step"
config.lr_steps = (12, 20, 24)
config.lr_gamma = 0.1

config.rec = "./rec/cemiface"
config.num_classes = "auto"  # expected 10,000
config.num_image = "auto"
config.num_epoch = 26
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30", "cplfw", "calfw"]
