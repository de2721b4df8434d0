"""The recipe the 10K-identity synthetic-set configs share (DCFace, CemiFace, Vec2Face HSFace10K, UIFace).

Not a config itself: configs/dcface.py and the others start from one of the functions below and set
only what differs (their data folder, and for vec2face_irse50.py its network and augmentation).
Each call returns a fresh edict, so two configs loaded in one process never share a value.

    seed_ir50(rec)       dcface.py, cemiface.py, vec2face.py, uiface.py: the seed's comparison table
    adaface_irse50(rec)  dcface_adaface_irse50.py, cemiface_adaface_irse50.py: the AdaFace papers' setting
    common(rec)          the keys all of them share (vec2face_irse50.py builds on it directly)

Hyper-parameters common to all, chosen for a ~0.5M-image, 10K-class, single-GPU run:
- SGD lr 0.1, momentum 0.9, weight decay 5e-4: the LR of the config the Vec2Face authors published
  for HSFace10K (0.5M images, 10K identities), which the AdaFace recipe uses as well.
- num_epoch 26: the budget of the Vec2Face and AdaFace recipes on 0.5M-image sets.
- num_classes / num_image "auto": read from the data (10,000 identities and 0.50-0.55M images in
  each of these sets), so the step count and the LR schedule follow the real data set.
- sample_rate 1.0: 10K class centres are small (20 MB); Partial FC sampling gains nothing here.
- save_all_states True: checkpoint_gpu_0.pt every epoch, so `--set resume=True` continues a run.
"""
from easydict import EasyDict as edict

VAL_TARGETS = ["lfw", "cfp_fp", "agedb_30", "cplfw", "calfw"]
AUTHORS_LR_STEPS = (12, 20, 24)       # the published recipes: LR x0.1 after these epochs


def common(rec: str) -> edict:
    """The keys every synthetic-set config shares, reading its data from ``rec``."""
    config = edict()
    config.resume = False
    config.save_all_states = True
    config.output = None  # -> work_dirs/<config file name>
    config.embedding_size = 512
    config.sample_rate = 1.0
    config.fp16 = True
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.weight_decay = 5e-4
    config.lr = 0.1
    config.frequent = 10
    config.dali = False
    config.num_workers = 8  # decoding JPEGs fast enough for one GPU takes more than the default 2
    config.rec = rec
    config.num_classes = "auto"
    config.num_image = "auto"
    config.num_epoch = 26
    config.val_targets = list(VAL_TARGETS)
    return config


def seed_ir50(rec: str) -> edict:
    """IR-50 ArcFace on one GPU, the seed's comparison-table setting.

    - batch_size 128: the batch (per GPU) of the Vec2Face authors' HSFace10K config;
      LResNet50E_IR with fp16 at batch 128 fits one GPU with room to spare.
    - warmup_epoch 1, then the original's linear (power 1) decay to 0: one warm-up epoch keeps
      lr 0.1 from disturbing the randomly initialised class centres in the first steps.
    - verbose 4000: 500,000-550,000 images // 128 = 3,906-4,296 steps per epoch, so the five
      benchmarks run about once per epoch.
    - The seed fork itself trained with lr 0.02, 30 epochs and no warm-up; to repeat that:
      python train_v2.py configs/<set>.py --set lr=0.02 num_epoch=30 warmup_epoch=0
    """
    config = common(rec)
    config.margin_list = (1.0, 0.5, 0.0)
    config.network = "LResNet50E_IR"  # IR50 model (the seed fork's LResNet, not insightface's r50)
    config.batch_size = 128
    config.verbose = 4000
    config.warmup_epoch = 1
    return config


def step_schedule(config: edict) -> edict:
    """The published recipes' schedule: no warm-up, LR x0.1 after epochs 12, 20 and 24 (in place)."""
    config.lr_scheduler = "step"
    config.lr_steps = AUTHORS_LR_STEPS
    config.lr_gamma = 0.1
    config.warmup_epoch = 0
    return config


def adaface_irse50(rec: str) -> edict:
    """IR-SE-50 + AdaFace, the setting the DCFace and CemiFace papers report (torchrun x2 for 2 x 256).

    The AdaFace repository (mk-minchul/AdaFace, scripts/ and config.py; ../shared/spec/margins.md
    sections 1 and 7): m 0.4, h 0.333, s 64, t_alpha 0.01, 2 GPUs x 256 images, SGD lr 0.1
    (momentum 0.9, weight decay 5e-4), 26 epochs, LR x0.1 after epochs 12, 20 and 24, no warm-up, fp16.
    Differences that no key here expresses:
    - its augmentation (random-resized crop, low-resolution resize, photometric jitter, each with
      probability 0.2) is not reproduced; its images are BGR (here RGB: irrelevant when training
      from scratch, relevant when loading its checkpoints);
    - its SGD groups exclude BatchNorm parameters from weight decay;
    - its IR-SE-50 is the InsightFace_Pytorch-style network; ir_se50 here is this toolkit's
      iResNet-50 with an SE module (reduction 16) on every block (backbones/iresnet.py).
    Statistics of the AdaFace margin are taken over the global batch (all ranks), as in CVLface's
    PartialFC_V2; the reference trainer uses each GPU's own batch (README "Margin heads").
    """
    config = step_schedule(common(rec))
    config.margin = "adaface"
    config.margin_params = {"m": 0.4, "h": 0.333, "t_alpha": 0.01}
    config.margin_scale = 64.0
    config.network = "ir_se50"
    config.batch_size = 256
    config.verbose = 2000  # 550,000 // 256 = 2,148 steps per epoch on one GPU: about one verification per epoch
    return config
