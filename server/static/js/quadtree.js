// The quadtree of an answer, drawn. Leaves are [level, row, col, class_id]; level 0 blocks
// are 32×32 pixels and each level halves them. The leaves are the canonical quadtree of the
// mask, so painting them (clipped to the image) gives the mask pixel for pixel: the page
// works from them alone and never has to read class ids back out of a decoded PNG.

function blockOf(leaf, width, height) {
  const [level, row, col] = leaf;
  const size = 32 >> level;
  const x = col * size;
  const y = row * size;
  return { x, y, w: Math.min(size, width - x), h: Math.min(size, height - y) };
}

// The class id of every pixel, row-major.
export function classMap(result) {
  const { width, height } = result;
  const map = new Uint8Array(width * height);
  for (const leaf of result.quadtree.leaves) {
    const { x, y, w, h } = blockOf(leaf, width, height);
    for (let r = y; r < y + h; r += 1) map.fill(leaf[3], r * width + x, r * width + x + w);
  }
  return map;
}

// The share of pixels where two class maps of one image agree.
export function agreement(a, b) {
  let same = 0;
  for (let i = 0; i < a.length; i += 1) if (a[i] === b[i]) same += 1;
  return a.length ? same / a.length : 1;
}

// The mask in the palette's colours; classes not in `visible` are left transparent.
export function drawMask(canvas, result, map, palette, visible) {
  const { width, height } = result;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const rgba = palette.map((colour, id) => [...colour, visible.has(id) ? 255 : 0]);
  for (let i = 0; i < map.length; i += 1) {
    const colour = rgba[map[i]] || [0, 0, 0, 0];
    pixels.data.set(colour, i * 4);
  }
  context.putImageData(pixels, 0, 0);
}

// Every leaf as a block outline, one image pixel wide.
export function drawLeaves(canvas, result) {
  const { width, height } = result;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  context.beginPath();
  for (const leaf of result.quadtree.leaves) {
    const { x, y, w, h } = blockOf(leaf, width, height);
    context.rect(x + 0.5, y + 0.5, w - 1, h - 1);
  }
  context.lineWidth = 1;
  context.strokeStyle = "rgba(255, 255, 255, 0.75)";
  context.stroke();
}
