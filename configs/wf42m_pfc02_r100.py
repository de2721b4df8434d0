from easydict import EasyDict as edict

# values from the original arcface_torch configs/wf42m_pfc02_r100.py (deepinsight/insightface,
# recognition/arcface_torch at d9cb10e); `rec` is where the original kept the data (a tmpfs):
# point it at your copy, e.g. `--set rec=/data/WebFace42M`.

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "r100"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 0.2
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128
config.lr = 0.1
config.verbose = 10000
config.dali = False

config.rec = "/train_tmp/WebFace42M"
config.num_classes = 2059906
config.num_image = 42474557
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ['lfw', 'cfp_fp', "agedb_30"]
