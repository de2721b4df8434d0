from easydict import EasyDict as edict

# values from the original arcface_torch configs/wf42m_pfc03_40epoch_8gpu_vit_b.py (deepinsight/insightface,
# recognition/arcface_torch at 4f227ba); `rec` is where the original kept the data (a tmpfs):
# point it at your copy, e.g. `--set rec=/data/WebFace42M`.

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "vit_b_dp005_mask_005"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 0.3
config.fp16 = True
config.weight_decay = 0.1
config.batch_size = 256
config.gradient_acc = 12  # total batchsize is 256 * 12
config.optimizer = "adamw"
config.lr = 0.001
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/WebFace42M"
config.num_classes = 2059906
config.num_image = 42474557
config.num_epoch = 40
config.warmup_epoch = config.num_epoch // 10
config.val_targets = []
