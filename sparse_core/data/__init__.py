"""Data sets: synthetic generation, preparation from YOLO/COCO/VOC with validation, and content hashing."""
