// AudioWorklet: microphone samples (at the AudioContext's rate, e.g. 48 kHz) -> 16 kHz int16
// frames posted to the page as ArrayBuffers. Resampling: windowed-sinc low-pass at 0.9 x the
// target Nyquist frequency, then linear interpolation at the output instants.
// Post "flush" to get the last, shorter frame, followed by {flushed: true}.

function lowpass(cutoff, numTaps) {
  // cutoff in cycles per input sample (< 0.5); Hann-windowed sinc, unit DC gain
  const taps = new Float32Array(numTaps);
  const mid = (numTaps - 1) / 2;
  let sum = 0;
  for (let k = 0; k < numTaps; k++) {
    const t = k - mid;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    const hann = 0.5 - 0.5 * Math.cos((2 * Math.PI * k) / (numTaps - 1 || 1));
    taps[k] = sinc * hann;
    sum += taps[k];
  }
  for (let k = 0; k < numTaps; k++) taps[k] /= sum;
  return taps;
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.frameSize = Math.round((this.targetRate * (opts.frameMs || 100)) / 1000);
    this.taps = this.step > 1 ? lowpass((0.5 / this.step) * 0.9, Math.ceil(8 * this.step) | 1) : Float32Array.of(1);
    this.history = new Float32Array(this.taps.length); // ring buffer of recent input
    this.head = 0;
    this.filtered = []; // filtered input not yet passed by the output position
    this.pos = 0; // next output instant, in input samples relative to filtered[0]
    this.frame = new Int16Array(this.frameSize);
    this.fill = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        if (this.fill > 0) this.port.postMessage(this.frame.slice(0, this.fill).buffer);
        this.fill = 0;
        this.port.postMessage({ flushed: true });
      }
    };
  }

  emit(value) {
    const s = Math.max(-1, Math.min(1, value));
    this.frame[this.fill++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
    if (this.fill === this.frameSize) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(this.frameSize);
      this.fill = 0;
    }
  }

  process(inputs, outputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      const taps = this.taps;
      const n = taps.length;
      for (let i = 0; i < channel.length; i++) {
        this.history[this.head] = channel[i];
        let acc = 0;
        for (let k = 0, j = this.head; k < n; k++, j = j === 0 ? n - 1 : j - 1) acc += taps[k] * this.history[j];
        this.head = (this.head + 1) % n;
        this.filtered.push(acc);
      }
      while (this.pos + 1 < this.filtered.length) {
        const i = Math.floor(this.pos);
        const frac = this.pos - i;
        this.emit(this.filtered[i] * (1 - frac) + this.filtered[i + 1] * frac);
        this.pos += this.step;
      }
      const consumed = Math.floor(this.pos);
      this.filtered.splice(0, consumed);
      this.pos -= consumed;
    }
    if (outputs[0] && outputs[0][0]) outputs[0][0].fill(0); // silent output keeps the node pulled
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
