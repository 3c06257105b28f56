/* uprobe_cost.S: two functions for bench/uprobe_cost.py, alike but for their first
 * instruction: a push (the kernel emulates it when probed) or a sub (single-stepped). */
	.text
	.globl f_push
	.type f_push, @function
f_push:
	push %r13
	pop %r13
	lea 1(%rdi), %eax
	ret
	.globl f_sub
	.type f_sub, @function
f_sub:
	sub $0x18, %rsp
	add $0x18, %rsp
	lea 1(%rdi), %eax
	ret
	.section .note.GNU-stack,"",@progbits
