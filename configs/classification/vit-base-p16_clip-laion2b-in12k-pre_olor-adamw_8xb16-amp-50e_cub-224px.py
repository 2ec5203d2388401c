# ViT-B/16 (CLIP LAION-2B, ImageNet-12k and -1k fine-tuned) fine-tuned on
# CUB-200-2011 with mmolor's OLORAdamW: the paper's recipe, with SPD's review.
#
# The CIFAR-100 ViT-B/16 config (model, the authors' optimizer, schedule,
# SPD's review and hooks; see its header for where each number comes from)
# with CUB-200-2011's 200 classes and images.
_base_ = './vit-base-p16_clip-laion2b-in12k-pre_olor-adamw_8xb16-amp-50e_cifar100-224px.py'  # noqa: E501

model = dict(head=dict(num_classes=200))

# CUB-200-2011 (mmpretrain's CUB, the official train / test split; images
# read from files, BGR, hence the recipe's to_rgb=True).
data_preprocessor = dict(num_classes=200, to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='CUB',
        data_root='data/CUB_200_2011',
        split='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='CUB',
        data_root='data/CUB_200_2011',
        split='test',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
