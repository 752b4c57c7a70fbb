"""The segmentation network (Myronenko 2018; MONAI SegResNetVAE/SegResNet) and what a clinical
node needs around it: label conventions, manifests, a registry, training, inference, evaluation."""
